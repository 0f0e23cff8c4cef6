"""Teacher back ends: the ``Teacher`` protocol (``base``), SDPO's reprompted self-teacher context
(``reprompt``) and the HTTP client of external teachers (``server``, registered as teacher kind "server").
"""

from opdkit.teachers import server as _server  # noqa: F401  (registers teacher kind "server")
