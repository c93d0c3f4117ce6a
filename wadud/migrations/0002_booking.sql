-- Booking: doctors, credentials, availability, bookings, instant queue, reviews.
-- Every tenant row carries its clinic_id; handlers filter on it.

CREATE TABLE doctors (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- A dense integer twin of id for the bookings exclusion constraint:
    -- core PostgreSQL has GiST operator classes for ranges but not for uuid
    -- equality (that needs btree_gist, which not every host ships), so
    -- "same doctor" is spelled int8range(key, key, '[]') && ... there.
    key               bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    clinic_id         uuid NOT NULL REFERENCES clinics (id),
    user_id           uuid UNIQUE REFERENCES users (id),
    display_name      text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    specialty         text NOT NULL CHECK (specialty ~ '^[a-z][a-z0-9_-]{0,62}$'),
    languages         text[] NOT NULL DEFAULT '{}',
    bio               text NOT NULL DEFAULT '' CHECK (length(bio) <= 5000),
    fee_minor         bigint NOT NULL CHECK (fee_minor >= 0),
    currency          text NOT NULL CHECK (currency IN ('PKR', 'AED', 'QAR', 'SAR')),
    region            text NOT NULL CHECK (region IN ('PK', 'AE', 'QA', 'SA')),
    -- draft -> pending_verification -> published; suspended by an admin.
    status            text NOT NULL DEFAULT 'draft'
                      CHECK (status IN ('draft', 'pending_verification', 'published', 'suspended')),
    published_at      timestamptz,
    -- Availability settings (the weekly windows are rows of availability_rules).
    time_zone         text NOT NULL DEFAULT 'UTC',
    buffer_before_min integer NOT NULL DEFAULT 0 CHECK (buffer_before_min BETWEEN 0 AND 240),
    buffer_after_min  integer NOT NULL DEFAULT 0 CHECK (buffer_after_min BETWEEN 0 AND 240),
    min_notice_min    integer NOT NULL DEFAULT 60 CHECK (min_notice_min BETWEEN 0 AND 43200),
    horizon_days      integer NOT NULL DEFAULT 60 CHECK (horizon_days BETWEEN 1 AND 365),
    slot_minutes      jsonb NOT NULL DEFAULT '{"video": 20, "in_person": 30}',
    -- Aggregates kept in step by the review handlers, for search.
    rating_count      integer NOT NULL DEFAULT 0,
    rating_sum        integer NOT NULL DEFAULT 0,
    -- Earliest free slot, refreshed when availability or bookings change and
    -- by a periodic sweep (time passing makes slots vanish).
    next_free_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, key)
);
CREATE INDEX doctors_clinic ON doctors (clinic_id);
-- Search: published doctors by region and specialty, then price or rating or
-- next free slot; languages through a GIN index.
CREATE INDEX doctors_search ON doctors (region, specialty, fee_minor) WHERE status = 'published';
CREATE INDEX doctors_search_next ON doctors (region, specialty, next_free_at)
    WHERE status = 'published';
CREATE INDEX doctors_languages ON doctors USING gin (languages) WHERE status = 'published';

CREATE TABLE doctor_documents (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    doctor_id    uuid NOT NULL REFERENCES doctors (id) ON DELETE CASCADE,
    clinic_id    uuid NOT NULL REFERENCES clinics (id),
    kind         text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_-]{0,62}$'),
    filename     text NOT NULL CHECK (length(filename) BETWEEN 1 AND 255),
    content_type text NOT NULL,
    size_bytes   bigint NOT NULL CHECK (size_bytes > 0),
    sha256       text NOT NULL,
    storage_key  text NOT NULL,
    status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'verified', 'rejected')),
    reviewed_by  uuid REFERENCES users (id),
    reviewed_at  timestamptz,
    review_note  text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX doctor_documents_doctor ON doctor_documents (doctor_id);

CREATE TABLE availability_rules (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    doctor_id   uuid NOT NULL REFERENCES doctors (id) ON DELETE CASCADE,
    clinic_id   uuid NOT NULL REFERENCES clinics (id),
    weekday     smallint NOT NULL CHECK (weekday BETWEEN 0 AND 6), -- 0 = Monday
    start_local time NOT NULL,
    end_local   time NOT NULL,
    types       text[] NOT NULL DEFAULT '{video}'
);
CREATE INDEX availability_rules_doctor ON availability_rules (doctor_id);

CREATE TABLE availability_overrides (
    doctor_id  uuid NOT NULL REFERENCES doctors (id) ON DELETE CASCADE,
    clinic_id  uuid NOT NULL REFERENCES clinics (id),
    day        date NOT NULL,
    -- [] with closed = true: a day off; otherwise the day's windows, replacing
    -- the weekly ones: [{"start": "10:00", "end": "12:00", "types": ["video"]}]
    windows    jsonb NOT NULL DEFAULT '[]',
    closed     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (doctor_id, day)
);

CREATE TABLE bookings (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id        uuid NOT NULL REFERENCES clinics (id),
    doctor_id        uuid NOT NULL,
    doctor_key       bigint NOT NULL,
    patient_id       uuid NOT NULL REFERENCES users (id),
    type             text NOT NULL CHECK (type IN ('video', 'in_person')),
    starts_at        timestamptz NOT NULL,
    ends_at          timestamptz NOT NULL,
    -- The time the booking keeps the doctor from others: the slot widened by
    -- the doctor's buffers at booking time (booking.availability.blocked_range).
    blocked          tstzrange NOT NULL,
    -- held -> requested -> accepted -> in_progress -> completed, with
    -- cancelled, no_show, expired (booking/lifecycle.py is the one table).
    status           text NOT NULL
                     CHECK (status IN ('held', 'requested', 'accepted', 'in_progress',
                                       'completed', 'cancelled', 'no_show', 'expired')),
    hold_expires_at  timestamptz,
    price_minor      bigint NOT NULL CHECK (price_minor >= 0),
    currency         text NOT NULL CHECK (currency IN ('PKR', 'AED', 'QAR', 'SAR')),
    -- Hash of the secret in the patient's cancel/reschedule link.
    manage_token_hash bytea,
    cancelled_by     text,
    cancel_reason    text,
    refund_minor     bigint NOT NULL DEFAULT 0 CHECK (refund_minor >= 0),
    instant          boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at),
    CHECK (blocked @> tstzrange(starts_at, ends_at)),
    FOREIGN KEY (doctor_id, doctor_key) REFERENCES doctors (id, key),
    -- The invariant: no two active bookings of one doctor overlap, buffers
    -- included, however many requests race for the time.
    CONSTRAINT bookings_no_overlap EXCLUDE USING gist (
        int8range(doctor_key, doctor_key, '[]') WITH &&,
        blocked WITH &&
    ) WHERE (status IN ('held', 'requested', 'accepted', 'in_progress'))
);
CREATE INDEX bookings_doctor_time ON bookings (doctor_id, starts_at);
CREATE INDEX bookings_patient ON bookings (patient_id, starts_at);
CREATE INDEX bookings_clinic ON bookings (clinic_id, starts_at);
CREATE INDEX bookings_holds ON bookings (hold_expires_at) WHERE status = 'held';

-- Every state change of a booking, for audit and support.
CREATE TABLE booking_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    booking_id uuid NOT NULL REFERENCES bookings (id) ON DELETE CASCADE,
    clinic_id  uuid NOT NULL REFERENCES clinics (id),
    event      text NOT NULL,
    from_state text,
    to_state   text NOT NULL,
    actor_id   uuid,
    detail     jsonb NOT NULL DEFAULT '{}',
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX booking_events_booking ON booking_events (booking_id, id);

-- Instant consultations: patients queue per clinic and specialty; a doctor
-- takes the next with FOR UPDATE SKIP LOCKED.
CREATE TABLE instant_queue (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id  uuid NOT NULL REFERENCES clinics (id),
    specialty  text NOT NULL,
    patient_id uuid NOT NULL REFERENCES users (id),
    status     text NOT NULL DEFAULT 'waiting' CHECK (status IN ('waiting', 'taken', 'left')),
    note       text NOT NULL DEFAULT '' CHECK (length(note) <= 2000),
    enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    taken_by   uuid REFERENCES doctors (id),
    taken_at   timestamptz,
    booking_id uuid REFERENCES bookings (id)
);
CREATE INDEX instant_queue_waiting ON instant_queue (clinic_id, specialty, enqueued_at)
    WHERE status = 'waiting';
-- A patient waits once per queue.
CREATE UNIQUE INDEX instant_queue_one_wait ON instant_queue (clinic_id, specialty, patient_id)
    WHERE status = 'waiting';

CREATE TABLE reviews (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    booking_id uuid NOT NULL UNIQUE REFERENCES bookings (id),
    clinic_id  uuid NOT NULL REFERENCES clinics (id),
    doctor_id  uuid NOT NULL REFERENCES doctors (id),
    patient_id uuid NOT NULL REFERENCES users (id),
    rating     smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    body       text NOT NULL DEFAULT '' CHECK (length(body) <= 5000),
    hidden     boolean NOT NULL DEFAULT false,
    hidden_by  uuid REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reviews_doctor ON reviews (doctor_id, created_at DESC) WHERE NOT hidden;
