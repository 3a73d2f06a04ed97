"""
The daemon as a whole: the service tree that wires every layer together,
the twistd plugin's options and C{makeService}, and the C{ocicache} CLI.

May import: everything.  Nothing imports it but L{ocicache} and the twistd
plugin.
"""
