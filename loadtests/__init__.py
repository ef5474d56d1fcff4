"""Load tests of the M5 service: a locust traffic mix, an SLA gate over locust's CSV, plots."""
