# Written by hand in `tortoise makemigrations`' form: events are fanned out to their deliveries
# by the sender (outgoing_webhooks/fan_out.py). Events already recorded have their deliveries,
# so the new column is false for them.
from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [('models', '0009_outgoing_webhooks')]

    initial = False

    operations = [
        ops.AddField(
            model_name='WebhookEvent',
            name='fan_out_pending',
            field=fields.BooleanField(default=False),
        ),
        # The fan-out reads only the events still waiting for it, oldest first.
        ops.RunSQL(
            "CREATE INDEX webhook_events_fan_out ON webhook_events (created_at, id)"
            " WHERE fan_out_pending",
            reverse_sql="DROP INDEX IF EXISTS webhook_events_fan_out",
        ),
    ]
