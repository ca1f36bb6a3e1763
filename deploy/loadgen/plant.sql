-- Problems for the Tables and indexes dashboard to find, on pgbench's tables. Safe to run
-- again: every statement does nothing when its object exists.

-- Two indexes no query uses (pgbench looks accounts up by aid only), one a duplicate of the
-- other: the index health checks report both as unused, the second as a duplicate.
CREATE INDEX IF NOT EXISTS pgbench_accounts_bid_idx ON pgbench_accounts (bid);
CREATE INDEX IF NOT EXISTS pgbench_accounts_bid_copy_idx ON pgbench_accounts (bid);

-- A foreign key without an index on its column (deleting an account would scan the table),
-- and an identity sequence for the sequences collector, used a little.
CREATE TABLE IF NOT EXISTS account_notes (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aid integer NOT NULL REFERENCES pgbench_accounts (aid),
    note text NOT NULL
);
INSERT INTO account_notes (aid, note)
SELECT aid, 'note ' || aid FROM pgbench_accounts
WHERE aid <= 100 AND NOT EXISTS (SELECT FROM account_notes);
