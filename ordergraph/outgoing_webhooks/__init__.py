"""Outgoing webhooks: the shop's other systems hear of every order, at least once, signed.

- `events`: an event and its deliveries are written in the transaction of the change they
  report (so none is lost, and none is sent for a change that rolled back);
- `endpoints`: what staff do (register, pause, delete, list, replay);
- `targets`: which URLs and addresses may be called, checked again at every delivery;
- `signing`: `Ordergraph-Signature`, Stripe's scheme with the endpoint's secret;
- `deliveries`: claiming due deliveries (`FOR UPDATE SKIP LOCKED`) and recording outcomes;
- `sender`: the background task that POSTs them.
"""
