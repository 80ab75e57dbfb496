-- Pluct engine, SQLite store.  Applied idempotently at start-up.
-- The ledger is append-only: triggers refuse UPDATE and DELETE, and balances carry a CHECK so
-- that no bug above this layer can ever make one negative.

CREATE TABLE IF NOT EXISTS accounts (
    user_id      TEXT PRIMARY KEY,
    balance      INTEGER NOT NULL CHECK (balance >= 0),
    updated_at   TEXT NOT NULL,
    -- The user's rate-limit window (see `sqlite_ops`); files made before these columns get
    -- them from `SQLiteStore.open`.
    window_start INTEGER NOT NULL DEFAULT 0,
    window_count INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS ledger (
    -- No AUTOINCREMENT: ids grow anyway, since rows are never deleted (see the triggers), and
    -- it would cost every append an update of sqlite_sequence.
    id            INTEGER PRIMARY KEY,
    user_id       TEXT NOT NULL,
    -- Spelt as ORs, not `action IN (...)`: SQLite evaluates an IN list of constants by
    -- building a temporary b-tree on every insert, which doubled the cost of a ledger append.
    action        TEXT NOT NULL
                  CHECK (action = 'vend' OR action = 'vend_refused' OR action = 'vend_rate_limited'
                         OR action = 'grant' OR action = 'refund'),
    delta         INTEGER NOT NULL,
    balance_after INTEGER NOT NULL CHECK (balance_after >= 0),
    request_id    TEXT NOT NULL,
    ip            TEXT NOT NULL,
    user_agent    TEXT NOT NULL,
    reason        TEXT NOT NULL DEFAULT '',
    at            TEXT NOT NULL,
    -- The HTTP request's X-Request-Id, for the access log; files made before it gain the
    -- column from `SQLiteStore.open`.
    http_request_id TEXT NOT NULL DEFAULT ''
);

CREATE INDEX IF NOT EXISTS ledger_by_user ON ledger (user_id, id);
-- A vend's requestId is 128 random bits, unique by construction; an index to enforce it would
-- cost every vend a b-tree insert.  A refund names a vend, so refunds are what must be unique.
DROP INDEX IF EXISTS ledger_one_vend_per_request;
CREATE UNIQUE INDEX IF NOT EXISTS ledger_one_refund_per_vend
    ON ledger (user_id, request_id) WHERE action = 'refund';

CREATE TRIGGER IF NOT EXISTS ledger_is_immutable_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END;
CREATE TRIGGER IF NOT EXISTS ledger_is_immutable_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END;

-- A rowid table, unlike the others: a stored vend receipt is ~500 bytes, and rows that large
-- make a WITHOUT ROWID b-tree insert cost twice as much.
CREATE TABLE IF NOT EXISTS responses (
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    body        BLOB NOT NULL,
    expires_at  REAL NOT NULL,
    PRIMARY KEY (scope, key)
);

-- Windows of subjects without an account (an IP, a user never granted credits).
CREATE TABLE IF NOT EXISTS windows (
    key        TEXT PRIMARY KEY,
    count      INTEGER NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

-- Claims of earlier engines (a vended token now moves in vend_tokens): kept so their rows purge.
CREATE TABLE IF NOT EXISTS claims (
    name       TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS cache (
    key        TEXT PRIMARY KEY,
    value      BLOB NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

-- Refusals of users without an account (no credits, ever), counted per minute and reason
-- instead of one ledger entry each: fresh user ids cost nothing to mint.
CREATE TABLE IF NOT EXISTS refusal_tallies (
    minute INTEGER NOT NULL,
    reason TEXT NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (minute, reason)
) WITHOUT ROWID;
-- The job lifecycle: one vended token buys one job.  A token's row exists from the moment a
-- submission consumes it: `in_flight` while upstream is being asked (until `hold_until`),
-- `used` for good once upstream took the job.  No row = unused.  Kept as long as the ledger,
-- so that a vend whose token ran a job can never be refunded.
CREATE TABLE IF NOT EXISTS vend_tokens (
    jti        TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state = 'in_flight' OR state = 'used'),
    job_id     TEXT NOT NULL,
    hold_until REAL NOT NULL
) WITHOUT ROWID;

-- Each job and its last known state; a terminal state (completed with its result, failed
-- with its error) is written once and answered from here ever after.
CREATE TABLE IF NOT EXISTS jobs (
    job_id           TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL,
    jti              TEXT NOT NULL,
    vend_request_id  TEXT NOT NULL,
    state            TEXT NOT NULL,
    upstream_id      TEXT NOT NULL DEFAULT '',
    body             BLOB NOT NULL,
    change           TEXT NOT NULL DEFAULT '',
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    lost_since       REAL NOT NULL DEFAULT 0,
    credits_refunded INTEGER NOT NULL DEFAULT 0,
    expires_at       REAL NOT NULL
);

CREATE INDEX IF NOT EXISTS jobs_by_expiry ON jobs (expires_at);

-- The expiry purge deletes in small batches by these (`sqlite_ledger.purge_batch`): without
-- them each purge was a full scan of every table with the event loop held.
CREATE INDEX IF NOT EXISTS responses_by_expiry ON responses (expires_at);
CREATE INDEX IF NOT EXISTS windows_by_expiry ON windows (expires_at);
CREATE INDEX IF NOT EXISTS claims_by_expiry ON claims (expires_at);
CREATE INDEX IF NOT EXISTS cache_by_expiry ON cache (expires_at);
