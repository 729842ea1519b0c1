"""Serving, in modules that import only what they need:

- `loading`: a registered version's artifact into a model that scores (what training imports too);
- `pipeline`: the ranking itself, inputs in and scored items out (no database, no process state);
- `holders`: what a web process serves from (the models, the item snapshot) and the poller that refreshes them;
- `recommend`: a request's orchestration (routing, fallback, impressions, shadow scoring).

This module imports none of them, so that `recommendations.serving.loading` does not pull in the web runtime."""
