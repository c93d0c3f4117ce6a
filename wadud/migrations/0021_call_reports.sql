-- Each video visit's call report (booking/call_reports.py, docs/calls.md
-- "Call reports"): what the media worker and each participant's page saw,
-- sampled every few seconds, kept with the booking until the retention rule
-- (retention_call_report_days) deletes it.
--
--   call_participants  who took part (a participant id per join of the room)
--   call_samples       one look at one participant: source 'media' (the
--                      worker: loss, RTT, jitter, bitrates, layers received,
--                      quality shown) or 'page' (the browser's own getStats:
--                      freezes, concealed audio, TURN use, ICE restarts)
--   call_events        transport changes (connected, failed, closed) and
--                      the page's reconnects, at the time they happened
--   call_reports       one row per visit; ready_at set once the room has
--                      closed and every sample is written (outbox event
--                      call_report_ready)
CREATE TABLE call_reports (
    booking_id uuid PRIMARY KEY REFERENCES bookings (id) ON DELETE CASCADE,
    clinic_id uuid NOT NULL REFERENCES clinics (id) ON DELETE CASCADE,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz,
    ready_at timestamptz
);
CREATE INDEX call_reports_age ON call_reports (coalesce(ended_at, started_at));

CREATE TABLE call_participants (
    booking_id uuid NOT NULL REFERENCES call_reports (booking_id) ON DELETE CASCADE,
    clinic_id uuid NOT NULL,
    participant text NOT NULL,
    name text NOT NULL DEFAULT '',
    role text NOT NULL DEFAULT '',
    PRIMARY KEY (booking_id, participant)
);

CREATE TABLE call_samples (
    id bigserial PRIMARY KEY,
    booking_id uuid NOT NULL REFERENCES call_reports (booking_id) ON DELETE CASCADE,
    clinic_id uuid NOT NULL,
    participant text NOT NULL,
    source text NOT NULL CHECK (source IN ('media', 'page')),
    at timestamptz NOT NULL,
    data jsonb NOT NULL
);
CREATE INDEX call_samples_booking ON call_samples (booking_id, at);

CREATE TABLE call_events (
    id bigserial PRIMARY KEY,
    booking_id uuid NOT NULL REFERENCES call_reports (booking_id) ON DELETE CASCADE,
    clinic_id uuid NOT NULL,
    participant text NOT NULL,
    at timestamptz NOT NULL,
    kind text NOT NULL CHECK (kind IN ('connected', 'failed', 'closed', 'reconnect')),
    direction text NOT NULL DEFAULT '',
    detail text NOT NULL DEFAULT ''
);
CREATE INDEX call_events_booking ON call_events (booking_id, at);
