"""Security: key files, the encrypted container, column masking and file permissions.

Importing this package is cheap; ``cryptography`` (the ``secure`` extra) is imported only
when something is encrypted or decrypted.
"""
