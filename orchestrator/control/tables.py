"""The store's SQLite schema: its tables, indexes and triggers, and the version a store file carries.

Every statement is ``IF NOT EXISTS``: opening an older store creates what it lacks (``Store`` then fills
what a new table must start from: ``job_counts``). The triggers keep ``job_counts`` right in the same
transaction as every insert, status change and delete of a job, so counting jobs never scans them.
"""

SCHEMA_VERSION = 5  # 2: jobs and job_events; 3: pool_calls (and files); 4: programs and program_live;
# 5: job_counts (kept by triggers) and the indexes that keep listing, boot and retention off full scans

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, pool TEXT NOT NULL, slot INTEGER NOT NULL,
    created REAL NOT NULL, ttl_s REAL, closed REAL, close_reason TEXT
);
CREATE INDEX IF NOT EXISTS open_sessions ON sessions (created) WHERE closed IS NULL;
CREATE TABLE IF NOT EXISTS checkpoints (
    key TEXT PRIMARY KEY, blob BLOB, path TEXT, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, pool TEXT NOT NULL, op TEXT NOT NULL, args BLOB NOT NULL, session TEXT,
    status TEXT NOT NULL, max_retries INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, started REAL, finished REAL, result BLOB, error TEXT, events INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, pool);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created, id);
CREATE INDEX IF NOT EXISTS jobs_by_pool ON jobs (pool, created, id);
CREATE INDEX IF NOT EXISTS jobs_by_finished ON jobs (finished) WHERE finished IS NOT NULL;
CREATE TABLE IF NOT EXISTS job_counts (
    pool TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (pool, status)
);
CREATE TRIGGER IF NOT EXISTS job_counted AFTER INSERT ON jobs BEGIN
    INSERT INTO job_counts (pool, status, n) VALUES (NEW.pool, NEW.status, 1)
    ON CONFLICT (pool, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS job_recounted AFTER UPDATE OF status ON jobs WHEN OLD.status IS NOT NEW.status BEGIN
    UPDATE job_counts SET n = n - 1 WHERE pool = OLD.pool AND status = OLD.status;
    INSERT INTO job_counts (pool, status, n) VALUES (NEW.pool, NEW.status, 1)
    ON CONFLICT (pool, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS job_uncounted AFTER DELETE ON jobs BEGIN
    UPDATE job_counts SET n = n - 1 WHERE pool = OLD.pool AND status = OLD.status;
END;
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS pool_calls (
    pool TEXT NOT NULL, key TEXT NOT NULL, op TEXT NOT NULL, args BLOB NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (pool, key)
);
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL,
    created REAL NOT NULL, path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_created ON files (created, id);
CREATE TABLE IF NOT EXISTS programs (
    name TEXT NOT NULL, version INTEGER NOT NULL, record TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS program_live (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
"""
