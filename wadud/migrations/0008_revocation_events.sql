-- Revocation reaches live sockets (issue 12, finding 7).
--
-- Whenever a session is revoked (logout, a reused refresh token, an anonymous
-- session upgraded to an account, anything that sets revoked_at) or a user's
-- rights change (role, clinic, disabled, deleted), an outbox row with topic
-- 'auth.revoked' is committed in the same transaction. The outbox relay
-- publishes it on the bus topic of that name, so every replica's chat hub and
-- call service closes the user's WebSockets within moments. Triggers rather
-- than calls in the handlers, so no path that changes these rows (an admin's
-- SQL included) can forget to tell the sockets.
--
-- Payload: {"user_id": uuid, "family_id": uuid or null, "reason": text};
-- family_id null means every session of the user.

CREATE FUNCTION auth_family_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (topic, payload) VALUES (
        'auth.revoked',
        jsonb_build_object('user_id', NEW.user_id, 'family_id', NEW.id,
                           'reason', COALESCE(NEW.revoked_reason, 'revoked')));
    PERFORM pg_notify('wadud_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER token_families_revoked
    AFTER UPDATE OF revoked_at ON token_families
    FOR EACH ROW
    WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION auth_family_revoked();

CREATE FUNCTION auth_user_rights_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_reason text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        v_reason := 'account deleted';
    ELSIF NEW.disabled AND NOT OLD.disabled THEN
        v_reason := 'account disabled';
    ELSE
        v_reason := 'role changed';
    END IF;
    INSERT INTO outbox (topic, payload) VALUES (
        'auth.revoked',
        jsonb_build_object('user_id', OLD.id, 'family_id', NULL, 'reason', v_reason));
    PERFORM pg_notify('wadud_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_rights_changed
    AFTER UPDATE OF role, clinic_id, disabled ON users
    FOR EACH ROW
    WHEN (OLD.role IS DISTINCT FROM NEW.role
          OR OLD.clinic_id IS DISTINCT FROM NEW.clinic_id
          OR (NEW.disabled AND NOT OLD.disabled))
    EXECUTE FUNCTION auth_user_rights_changed();

CREATE TRIGGER users_deleted
    AFTER DELETE ON users
    FOR EACH ROW
    EXECUTE FUNCTION auth_user_rights_changed();
