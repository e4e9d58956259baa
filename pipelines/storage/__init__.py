"""Where runs read and write: URIs and filesystems (local, file://, s3://), and small tables handled on the driver."""
