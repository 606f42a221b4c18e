"""The dashboard's numbers: per-policy, per-tenant counters by minute, shared through Redis by
replicas, and the calibration audit. `build.start_stats` builds them in the app's lifespan."""
