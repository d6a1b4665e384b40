"""console
=======

The web console for IT admins, auditors and clinicians: a server-rendered Flask application
(:mod:`.app`, templates beside it) with CSRF protection on every form (Flask-WTF), Argon2id
password hashes (:mod:`.auth`), served by cheroot with TLS from config (:mod:`.server`) on its
own port, inside the daemon. It shows only what the database holds (UIDs, keyed pseudonyms,
states, scores, device attributes) and the de-identified working copy of a study's key image.
"""
