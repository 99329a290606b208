"""``pyserve plan``: plan for peaks. A load trace simulated against replicas of a measured model scaled
by the Kubernetes HPA: replicas over time, SLO misses, requests at risk, and what keeps the SLO."""
