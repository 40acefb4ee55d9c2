"""Administration: the admin HTTP port (``/healthz``, ``/metrics``), metrics, audit trail."""
