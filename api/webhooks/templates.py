"""A ready mapping per provider (`aforo webhooks add` uses it unless given --mapping).

Each picks the provider's own event id from the signed payload (so redeliveries dedup and a replay
under new headers is no new event), its event type, the account the usage belongs to as the
subject, and the provider's timestamp where the payload has one (else the first receipt's time).
"""

from __future__ import annotations

TEMPLATES: dict[str, dict] = {
    # Stripe event object: https://docs.stripe.com/api/events/object
    "stripe": {
        "id": "$.id", "type": "$.type", "subject": "$.data.object.customer", "time": "$.created",
        "data": {"quantity": "$.data.object.amount", "currency": "$.data.object.currency",
                 "object_id": "$.data.object.id", "livemode": "$.livemode"},
    },
    # Twilio message status callbacks are form posts, one per status change of a message (so the id
    # is message and status); they carry no timestamp (the time of receipt is used).
    "twilio": {
        "id": "{$.MessageSid}/{$.MessageStatus}", "type": "twilio.message.{$.MessageStatus}",
        "subject": "$.AccountSid",
        "data": {"status": "$.MessageStatus", "to": "$.To", "from": "$.From",
                 "segments": "$.NumSegments", "price": "$.Price"},
    },
    # SendGrid posts a JSON array of events in one signed request.
    "sendgrid": {
        "items": "$[*]", "id": "$.sg_event_id", "type": "$.event", "subject": "$.email",
        "time": "$.timestamp",
        "data": {"message_id": "$.sg_message_id", "category": "$.category"},
    },
    # GitHub: the delivery id and event name are headers, and only the body is signed: the id is
    # the payload's digest (a redelivery is the same bytes); the account is the repository owner.
    "github": {
        "id": "sha256:$", "type": "header:X-GitHub-Event",
        "subject": "$.repository.owner.login",
        "data": {"action": "$.action", "repository": "$.repository.full_name", "sender": "$.sender.login"},
    },
    # Slack Events API event_callback envelope.
    "slack": {
        "id": "$.event_id", "type": "$.event.type", "subject": "$.team_id", "time": "$.event_time",
        "data": {"user": "$.event.user", "channel": "$.event.channel", "api_app_id": "$.api_app_id"},
    },
    # Aforo's generic scheme: the sender posts a CloudEvent-like object.
    "generic": {
        "id": "$.id", "type": "$.type", "subject": "$.subject", "time": "$.time", "data": "$.data",
    },
}
