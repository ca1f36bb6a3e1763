-- A "report" that takes 0.8 s: pg_sleep stands in for a heavy plan, so the statement is slow
-- on any machine. At the default rate it runs about every two seconds, well over the slow
-- statement alert's threshold (mean above 500 ms with at least 5 calls in 5 minutes).
SELECT pg_sleep(0.8), count(*) AS branches FROM pgbench_branches;
