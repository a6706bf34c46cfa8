"""``hazeflow batch``: many inputs, one output set each, on a local process pool or a Ray cluster.

``inputs`` turns the command line into work units, ``worker`` runs one unit
with ``hazeflow run``'s graph (stages set up once per worker), ``pools`` starts
workers as local processes or Ray actors, ``driver`` plans, schedules and
records every state change in the manifest (``manifest``).
"""
