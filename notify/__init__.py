"""Notifications: email, web push, FCM, APNs, SMS and WhatsApp, from outbox events.

Floor: beside ``booking/`` and ``chat/``. It reads their events as plain data
(a trigger copies the outbox rows it acts on into ``notify_inbox``, see
``wadud/migrations/0011_notify.sql``) and imports no feature.

- ``notify.templates``: the messages in English, Urdu and Arabic, rendered
  in the recipient's language and time zone (sans-I/O).
- ``notify.plan``: what an event means (which jobs for whom, when; which
  reminders to cancel), how a due job becomes deliveries (a user's
  preferences and quiet hours; a guest's one address and channel), and the
  retry backoff (sans-I/O).
- ``notify.channels``: one sender per channel (SMTP, web push, FCM HTTP v1,
  APNs, signed webhooks for SMS and WhatsApp).
- ``notify.store``: the SQL: claiming inbox rows, due jobs and due deliveries
  with ``FOR UPDATE SKIP LOCKED``.
- ``notify.service``: :class:`~notify.service.Notifier`, the loops that run in
  ``wadud notify`` or inside ``wadud serve``.
- ``notify.http``: the user's preferences and devices over HTTP.
"""
