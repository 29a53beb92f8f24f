"""Mail: what the service writes to people (`messages`), the outbox it is queued in (`outbox`),
and the background sender that delivers it over SMTP (`sender`): claimed in batches
(`claims`), written as MIME directly (`mime`), over one kept-open SMTP session (`smtp`)."""
