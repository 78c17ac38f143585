# recpipe on the official Airflow image.
#
#   docker build -t recpipe-airflow .                                             # CPU TensorFlow
#   docker build -t recpipe-airflow-gpu --build-arg TENSORFLOW_PACKAGE="tensorflow[and-cuda]==2.21.0" .
#
# docker-compose.yaml builds both: the GPU Celery worker (queue "gpu") runs the CUDA build.
FROM apache/airflow:3.3.2-python3.11

# Which TensorFlow to install: the CPU wheel everywhere except the GPU worker, which gets
# `tensorflow[and-cuda]` (CUDA/cuDNN as pip wheels; the host needs the NVIDIA driver and the
# NVIDIA container toolkit). The two wheels provide the same `tensorflow` module, so
# requirements.txt's tensorflow-cpu pin is replaced, never installed next to it.
ARG TENSORFLOW_PACKAGE="tensorflow-cpu==2.21.0"

# The source tree and RECPIPE_HOME belong to the airflow user (and group 0, as the
# image's convention for arbitrary AIRFLOW_UID values).
USER root
RUN mkdir -p /opt/recpipe-src /opt/recpipe/home \
 && chown -R airflow:0 /opt/recpipe-src /opt/recpipe \
 && chmod -R g+rwX /opt/recpipe-src /opt/recpipe
USER airflow
WORKDIR /opt/recpipe-src

# Dependencies first (cached layer). Airflow stays at the image's version.
COPY --chown=airflow:0 requirements.txt /opt/recpipe-src/requirements.txt
RUN grep -viE '^(tensorflow|pytest)' requirements.txt > /tmp/requirements.txt \
 && pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/requirements.txt "${TENSORFLOW_PACKAGE}" \
 && rm /tmp/requirements.txt

# The repository (see .dockerignore), installed editable so `recpipe` and
# `python -m recpipe.cli` resolve to /opt/recpipe-src.
COPY --chown=airflow:0 . /opt/recpipe-src
RUN pip install --no-cache-dir --no-deps -e /opt/recpipe-src \
 && python -c "import recpipe.config, recpipe.alerts"

ENV RECPIPE_HOME=/opt/recpipe/home \
    RECPIPE_GPU_QUEUE=gpu
WORKDIR /opt/airflow
