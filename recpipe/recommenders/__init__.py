"""One module per model behind the interface of recpipe.recommenders.base.

Each module defines RECOMMENDER; recpipe.registry lists them (one line per model).
"""
