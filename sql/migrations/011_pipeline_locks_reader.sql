-- Pipeline locks the analysts' role cannot reach, and no temporary tables or large
-- objects for that role.
--
-- Advisory locks are open to every role (pg_advisory_lock is granted to PUBLIC), so a
-- reader session could hold the pipeline's key and stall every ingest. The pipeline
-- now locks a row of pipeline_locks (SELECT ... FOR UPDATE under lock_timeout): that
-- needs UPDATE on the table, which only its owner (the role that migrates, i.e. the
-- pipeline's) has. A pipeline role other than the owner needs
-- GRANT SELECT, INSERT, UPDATE ON pipeline_locks TO that role.
CREATE TABLE pipeline_locks (
    name  text PRIMARY KEY      -- ingest, publish.<model>, ...
);
INSERT INTO pipeline_locks (name) VALUES ('ingest');
REVOKE ALL ON pipeline_locks FROM PUBLIC;

DO $$
BEGIN
    -- TEMP is a per-database privilege granted to PUBLIC by default. The pipeline
    -- itself stages data in temporary tables: the migrating role keeps the right.
    -- (quote_ident rather than format(): db.upgrade runs this file through psycopg2,
    -- which reads a percent sign, even in a comment, as a parameter.)
    EXECUTE 'REVOKE TEMPORARY ON DATABASE ' || quote_ident(current_database()) || ' FROM PUBLIC';
    EXECUTE 'GRANT TEMPORARY ON DATABASE ' || quote_ident(current_database()) || ' TO ' || quote_ident(current_user);
    -- Large objects: creating one needs EXECUTE on these functions, granted to PUBLIC.
    -- Only a superuser can change that (they belong to pg_catalog); the pipeline uses none.
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        REVOKE EXECUTE ON FUNCTION lo_create(oid), lo_creat(integer), lo_from_bytea(oid, bytea),
            lo_import(text), lo_import(text, oid) FROM PUBLIC;
    ELSE
        RAISE WARNING 'recpipe: not a superuser, so large-object creation stays open to PUBLIC; a superuser should run: REVOKE EXECUTE ON FUNCTION lo_create(oid), lo_creat(integer), lo_from_bytea(oid, bytea) FROM PUBLIC';
    END IF;
END
$$;
