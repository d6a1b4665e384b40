"""A plain HTTP client for the web console (cookies, CSRF tokens from the pages), for tests that
read many pages without a browser."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request

_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class ConsoleClient:
    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.token: str | None = None
        self.url = ""  # of the last answer, after redirects

    def _open(self, request: urllib.request.Request) -> tuple[int, bytes]:
        try:
            with self.opener.open(request, timeout=60) as response:
                status, body, self.url = response.status, response.read(), response.url
        except urllib.error.HTTPError as error:
            status, body, self.url = error.code, error.read(), error.url
        if match := _TOKEN.search(body.decode("utf-8", "replace")):
            self.token = match.group(1)
        return status, body

    def get(self, path: str) -> tuple[int, bytes]:
        return self._open(urllib.request.Request(self.base + path))

    def post(self, path: str, fields: dict[str, str]) -> tuple[int, bytes]:
        data = urllib.parse.urlencode({"csrf_token": self.token or "", **fields}).encode()
        return self._open(urllib.request.Request(self.base + path, data=data, method="POST"))

    def login(self, name: str, password: str) -> int:
        self.get("/login")
        status, _ = self.post("/login", {"name": name, "password": password})
        return status
