"""schema_sync"""
