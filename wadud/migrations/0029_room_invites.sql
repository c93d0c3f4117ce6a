-- Guests a visit's host invites (issue 39, docs/guests.md): an interpreter,
-- a family member, a second clinician, an observer. The link's key is not
-- stored: it is an HMAC of the invite's id under the server's secret
-- (wadud.web.auth.invite_key), so this table holds nothing that opens a room.
--
-- status: open (usable), approved (the patient agreed to a guest who needs
-- it), refused (the patient said no: the link is dead), revoked (the host
-- or the clinic took it back: the link is dead and the guest is sent out).
-- uses counts redemptions: each one mints one room token.
CREATE TABLE room_invites (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    room           text NOT NULL CHECK (length(room) BETWEEN 1 AND 128),
    clinic_id      uuid REFERENCES clinics (id),
    role           text NOT NULL CHECK (role ~ '^[a-z][a-z0-9_-]{0,31}$'),
    actions        text[] NOT NULL,
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- How the link reaches the guest (NULL: the inviter hands it over).
    channel        text CHECK (channel IN ('sms', 'whatsapp', 'email')),
    address        text CHECK (length(address) <= 254),
    locale         text NOT NULL DEFAULT 'en' CHECK (locale IN ('en', 'ur', 'ar')),
    -- A family member or an observer waits for the patient's agreement.
    needs_approval boolean NOT NULL,
    -- Who invited: a participant's identity, or an API key's id.
    invited_by     text NOT NULL CHECK (length(invited_by) BETWEEN 1 AND 128),
    not_before     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL CHECK (expires_at > not_before),
    max_uses       integer NOT NULL DEFAULT 1 CHECK (max_uses BETWEEN 1 AND 20),
    uses           integer NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    status         text NOT NULL DEFAULT 'open'
                   CHECK (status IN ('open', 'approved', 'refused', 'revoked')),
    decided_by     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    closed_at      timestamptz
);
CREATE INDEX room_invites_room ON room_invites (room, created_at);
