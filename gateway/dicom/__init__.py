"""DICOM object builders. They take pixels and typed modules; they know no
driver, queue or network."""
