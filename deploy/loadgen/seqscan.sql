-- Accounts with a given balance: there is no index on abalance, so every call scans the
-- whole table, and index_health flags pgbench_accounts as probably missing an index.
\set balance random(-5000, 5000)
SELECT count(*) FROM pgbench_accounts WHERE abalance = :balance;
