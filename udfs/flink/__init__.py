"""The job's PyFlink functions: thin wrappers that move records between Flink and ``udfs``."""
