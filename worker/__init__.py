"""SATs worker: DICOM in and out, the job pipeline and the command line."""
