"""Sandbox.create() against the server: it answers once envd answers, so the first envd call
works at once; the answer carries the access token (for envd and the ports) and the server's
sandbox domain. Prints the sandbox id last."""

import os

from e2b import Sandbox

# Private ports (E2B's default is public): the ports step checks the token is needed.
sbx = Sandbox.create("minimal", envs={"SANDBOX_GREETING": "hello from create"}, timeout=1800,
                     network={"allow_public_traffic": False})
assert sbx.is_running()
assert sbx._envd_access_token and sbx.traffic_access_token == sbx._envd_access_token
assert sbx.sandbox_domain == os.environ["E2B_DOMAIN"], sbx.sandbox_domain
assert str(sbx._envd_version) == "0.5.7", sbx._envd_version
info = Sandbox.get_info(sbx.sandbox_id)
assert info.sandbox_domain == os.environ["E2B_DOMAIN"], info
print(sbx.sandbox_id)
