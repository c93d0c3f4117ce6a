-- Consultation chat: conversations, members, the per-conversation event log,
-- attachments, and each clinic's chat policy. Bodies and attachments are
-- stored encrypted (AES-GCM); key_id names the key so keys can rotate.

-- What a clinic's staff may do in its conversations: nothing, read, or read
-- and write. No row means 'write' (staff "may join the conversation").
CREATE TABLE chat_clinic_policies (
    clinic_id    uuid PRIMARY KEY REFERENCES clinics (id),
    staff_access text NOT NULL CHECK (staff_access IN ('none', 'read', 'write')),
    updated_by   uuid REFERENCES users (id),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chat_conversations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id   uuid NOT NULL REFERENCES clinics (id),
    -- NULL: opened by the clinic between a patient and one of its doctors.
    booking_id  uuid UNIQUE REFERENCES bookings (id),
    patient_id  uuid NOT NULL REFERENCES users (id),
    doctor_id   uuid NOT NULL REFERENCES doctors (id),
    created_by  uuid REFERENCES users (id),
    -- The last sequence number handed out; the row lock on it is what orders
    -- a conversation's events, whichever node appends them.
    last_seq    bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    last_event_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chat_conversations_clinic ON chat_conversations (clinic_id, created_at DESC);
CREATE INDEX chat_conversations_patient ON chat_conversations (patient_id);
CREATE INDEX chat_conversations_doctor ON chat_conversations (doctor_id);
-- One clinic-opened conversation per patient and doctor.
CREATE UNIQUE INDEX chat_conversations_direct ON chat_conversations (clinic_id, patient_id, doctor_id)
    WHERE booking_id IS NULL;

-- Members with a read position. The patient and the doctor are added when the
-- conversation opens; clinic staff when they first read or write.
CREATE TABLE chat_members (
    conversation_id uuid NOT NULL REFERENCES chat_conversations (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users (id),
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    role            text NOT NULL CHECK (role IN ('patient', 'doctor', 'clinic_staff')),
    last_read_seq   bigint NOT NULL DEFAULT 0 CHECK (last_read_seq >= 0),
    joined_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX chat_members_user ON chat_members (user_id);

CREATE TABLE chat_attachments (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id uuid NOT NULL REFERENCES chat_conversations (id) ON DELETE CASCADE,
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    uploader_id     uuid NOT NULL REFERENCES users (id),
    -- Decided from the bytes (magic numbers), never from the name or header.
    content_type    text NOT NULL
                    CHECK (content_type IN ('image/jpeg', 'image/png', 'image/gif', 'image/webp',
                                            'application/pdf')),
    size_bytes      bigint NOT NULL CHECK (size_bytes > 0),
    sha256          text NOT NULL,          -- of the plaintext
    storage_key     text NOT NULL,          -- of the ciphertext in the store
    key_id          text NOT NULL,
    nonce           bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chat_attachments_conversation ON chat_attachments (conversation_id);

-- The log. Events are never updated: an edit or a delete is a new event
-- naming its target, so the original stays for the clinic's audit.
CREATE TABLE chat_events (
    conversation_id uuid NOT NULL REFERENCES chat_conversations (id) ON DELETE CASCADE,
    seq             bigint NOT NULL CHECK (seq > 0),
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    kind            text NOT NULL CHECK (kind IN ('message', 'edit', 'delete')),
    sender_id       uuid NOT NULL REFERENCES users (id),
    -- The sender's own id for the event: a retried send is answered with
    -- the first result instead of appending twice.
    client_id       text NOT NULL CHECK (length(client_id) BETWEEN 1 AND 100),
    target_seq      bigint CHECK ((kind = 'message') = (target_seq IS NULL)),
    key_id          text,
    nonce           bytea,
    body            bytea,                  -- AES-GCM ciphertext of the UTF-8 text
    attachment_id   uuid REFERENCES chat_attachments (id),
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (conversation_id, seq),
    UNIQUE (conversation_id, sender_id, client_id),
    CHECK ((body IS NULL) = (key_id IS NULL) AND (body IS NULL) = (nonce IS NULL))
);

-- Append one event in one round trip: lock the conversation row (the order),
-- answer a repeated (sender, client_id) with the first result, else insert at
-- last_seq + 1 and record the outbox row as wadud.outbox.emit does. Doing it
-- in one statement keeps the conversation's row lock as short as the hot path
-- allows. No NOTIFY here, unlike emit: PostgreSQL serialises the commits of
-- all notifying transactions (one queue lock held through the WAL flush),
-- which caps chat at one commit per fsync; the relay's poll picks these rows
-- up within outbox_poll_interval, soon enough for notifications.
CREATE FUNCTION chat_append(
    p_conversation uuid, p_sender uuid, p_client_id text, p_kind text, p_target bigint,
    p_key_id text, p_nonce bytea, p_body bytea, p_attachment uuid
) RETURNS TABLE (seq bigint, created_at timestamptz, duplicate boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_clinic uuid;
    v_seq bigint;
    v_at timestamptz;
BEGIN
    SELECT c.clinic_id, c.last_seq INTO v_clinic, v_seq
    FROM chat_conversations c WHERE c.id = p_conversation FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such conversation' USING ERRCODE = 'no_data_found';
    END IF;
    SELECT e.seq, e.created_at INTO seq, created_at FROM chat_events e
    WHERE e.conversation_id = p_conversation AND e.sender_id = p_sender
      AND e.client_id = p_client_id;
    IF FOUND THEN
        duplicate := true;
        RETURN NEXT;
        RETURN;
    END IF;
    v_seq := v_seq + 1;
    v_at := clock_timestamp();
    INSERT INTO chat_events (conversation_id, seq, clinic_id, kind, sender_id, client_id,
                             target_seq, key_id, nonce, body, attachment_id, created_at)
    VALUES (p_conversation, v_seq, v_clinic, p_kind, p_sender, p_client_id, p_target,
            p_key_id, p_nonce, p_body, p_attachment, v_at);
    UPDATE chat_conversations SET last_seq = v_seq, last_event_at = v_at
    WHERE id = p_conversation;
    INSERT INTO outbox (topic, payload) VALUES (
        'chat.message.' || CASE p_kind WHEN 'message' THEN 'sent' WHEN 'edit' THEN 'edited'
                                       ELSE 'deleted' END,
        jsonb_build_object('conversation_id', p_conversation, 'clinic_id', v_clinic,
                           'seq', v_seq, 'sender_id', p_sender, 'kind', p_kind,
                           'target_seq', p_target, 'attachment_id', p_attachment));
    seq := v_seq;
    created_at := v_at;
    duplicate := false;
    RETURN NEXT;
END;
$$;
