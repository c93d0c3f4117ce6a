"""Where state lives: the PostgreSQL pool and its migrations, uploaded files,
the audit trail, typed app-state keys.
"""
