"""validation
==========

Validating and watching the detector at a site: what the daemon observes of each instance
(:mod:`.observe`), ground-truth feedback (:mod:`.feedback`), the statistics (:mod:`.stats`,
pure functions on arrays), local performance (:mod:`.performance`), scanner drift
(:mod:`.drift`) and their plots (:mod:`.plots`).
"""
