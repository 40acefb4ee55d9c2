"""Sender role: results back to the PACS with retries, backoff and dead-letter.

``sender`` (the delivery loop over the job log), its transports behind ``store_result``'s
``StoreTransport``: ``cstore_client`` (C-STORE, DICOM TLS) and ``stow_client`` (STOW-RS).
"""
