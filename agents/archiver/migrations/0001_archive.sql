-- The jetmesh archive: a copy of what JetStream holds. Every row carries the
-- stream sequence it was copied from; a row is only ever replaced by a newer
-- one, so copying a message twice, or out of order, changes nothing.

CREATE TABLE IF NOT EXISTS jetmesh_plans (
    plan_id     text PRIMARY KEY,
    body        jsonb NOT NULL,
    stream_seq  bigint NOT NULL,
    stored_at   timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS jetmesh_task_results (
    plan_id     text NOT NULL,
    task_id     text NOT NULL,
    status      text NOT NULL,
    output      jsonb,
    error_code  text,
    error       jsonb,
    worker      text,
    attempt     integer,
    duration_ms bigint,
    finished_at timestamptz,
    body        jsonb NOT NULL,
    stream_seq  bigint NOT NULL,
    stored_at   timestamptz NOT NULL,
    PRIMARY KEY (plan_id, task_id)
);

CREATE TABLE IF NOT EXISTS jetmesh_reports (
    plan_id     text PRIMARY KEY,
    status      text,
    total_tasks integer,
    completed   integer,
    failed      integer,
    body        jsonb NOT NULL,
    stream_seq  bigint NOT NULL,
    stored_at   timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS jetmesh_audit (
    stream_seq   bigint PRIMARY KEY,
    subject      text NOT NULL,
    body         jsonb NOT NULL,
    published_at timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS jetmesh_task_results_status ON jetmesh_task_results (status);
CREATE INDEX IF NOT EXISTS jetmesh_audit_subject ON jetmesh_audit (subject, published_at);
