"""SATs gateway: HTTP API, DICOM node and job store. Never imports torch."""
