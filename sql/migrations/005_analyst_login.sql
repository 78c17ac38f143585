-- A login role for analysts: `psql -U recpipe_analyst` gets exactly the reader's rights
-- (the views). Roles are cluster-wide: created once, granted per database. Its password
-- (if the server asks for one) is set by the operator: ALTER ROLE recpipe_analyst PASSWORD '...'.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'recpipe_analyst') THEN
        CREATE ROLE recpipe_analyst LOGIN INHERIT IN ROLE recpipe_reader;
    END IF;
END
$$;
DO $$
BEGIN
    EXECUTE 'GRANT CONNECT ON DATABASE ' || quote_ident(current_database()) || ' TO recpipe_reader';
END
$$;
