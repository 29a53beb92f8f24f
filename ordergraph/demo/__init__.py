"""The demo: a whole shop on one machine (`stack`) and one purchase made as a client makes it
(`purchase`). Production never imports this package; only the CLI's `serve --demo` and
`demo` verbs, and the tests, do."""
