-- Recording a visit with everyone's consent (recording/, docs/recording.md).
--
--   recordings          one per time a visit was asked to be recorded: its
--                       state (recording/store.py's machine), who asked, and
--                       the recording's own AES-256 key wrapped under the
--                       patient's data key (privacy/subject_keys.py): erasing
--                       the patient shreds that key, after which no segment
--                       or file of the recording opens
--   recording_consents  each participant's answer, in order
--   recording_segments  the media worker's sealed RTP segments (rtc/rtpdump.py),
--                       one row per stored object
--   recording_files     the recorder's WebM files (sealed with the recording
--                       key), one per participant, and an optional composite
--
-- Every row carries its clinic. Deleting a recording deletes its rows
-- (ON DELETE CASCADE); the stored objects are deleted by whoever deletes the
-- rows, from the keys they read first.
CREATE TABLE recordings (
    id           uuid PRIMARY KEY,
    booking_id   uuid NOT NULL REFERENCES bookings (id) ON DELETE CASCADE,
    clinic_id    uuid NOT NULL REFERENCES clinics (id) ON DELETE CASCADE,
    patient_id   uuid NOT NULL REFERENCES users (id),
    room         text NOT NULL,
    requested_by uuid REFERENCES users (id) ON DELETE SET NULL,
    state        text NOT NULL DEFAULT 'asking'
                 CHECK (state IN ('asking', 'refused', 'recording', 'stopped', 'processing',
                                  'ready', 'failed')),
    failure      text,
    -- The recording key, sealed by the patient's data key ("s:<key id>").
    key_id       text NOT NULL,
    key_nonce    bytea NOT NULL,
    key_sealed   bytea NOT NULL,
    -- The recorder's claim: tries so far and until when the current one holds it.
    attempts     integer NOT NULL DEFAULT 0,
    lease_until  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    stopped_at   timestamptz,
    ready_at     timestamptz
);
-- At most one recording asks or records per booking at a time.
CREATE UNIQUE INDEX recordings_one_live ON recordings (booking_id)
    WHERE state IN ('asking', 'recording');
CREATE INDEX recordings_booking ON recordings (booking_id, created_at);
CREATE INDEX recordings_patient ON recordings (patient_id);
CREATE INDEX recordings_jobs ON recordings (stopped_at) WHERE state IN ('stopped', 'processing');
CREATE INDEX recordings_age ON recordings (coalesce(ready_at, stopped_at, created_at));

CREATE TABLE recording_consents (
    id           bigserial PRIMARY KEY,
    recording_id uuid NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    clinic_id    uuid NOT NULL,
    participant  text NOT NULL CHECK (length(participant) BETWEEN 1 AND 100),
    account_id   uuid,
    role         text NOT NULL CHECK (length(role) <= 40),
    agreed       boolean NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recording_consents_recording ON recording_consents (recording_id, id);

CREATE TABLE recording_segments (
    id           bigserial PRIMARY KEY,
    recording_id uuid NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    clinic_id    uuid NOT NULL,
    participant  text NOT NULL CHECK (length(participant) BETWEEN 1 AND 100),
    track_id     text NOT NULL CHECK (length(track_id) BETWEEN 1 AND 200),
    kind         text NOT NULL CHECK (kind IN ('audio', 'video')),
    index        integer NOT NULL CHECK (index >= 0),
    storage_key  text NOT NULL,
    packets      integer NOT NULL CHECK (packets >= 0),
    size_bytes   bigint NOT NULL CHECK (size_bytes >= 0),
    started_at   timestamptz NOT NULL,
    ended_at     timestamptz NOT NULL,
    UNIQUE (recording_id, track_id, index)
);

CREATE TABLE recording_files (
    id           uuid PRIMARY KEY,
    recording_id uuid NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    clinic_id    uuid NOT NULL,
    -- The participant id; empty for the composite.
    participant  text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('participant', 'composite')),
    storage_key  text NOT NULL,
    nonce        bytea NOT NULL,
    duration_seconds double precision NOT NULL,
    size_bytes   bigint NOT NULL,
    audio        boolean NOT NULL,
    video        boolean NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recording_files_recording ON recording_files (recording_id);
