"""Documents in SGLang frontend programs (``sgl.function``)::

    import sglang as sgl
    from redknot_sglang.integration.frontend import RedknotEndpoint, document

    @sgl.function
    def rag(s, docs, question):
        s += "Answer from the documents.\\n"
        for d in docs:
            document(s, d)          # appends the text and marks it as a reusable document
            s += "\\n"
        s += "Question: " + question + "\\nAnswer:" + sgl.gen("answer", max_tokens=32)

    sgl.set_default_backend(RedknotEndpoint("http://127.0.0.1:30000"))

The endpoint sends each generation's documents as text pieces in
``custom_params.redknot_documents`` (checked by the server; a bad mark fails that generation with
the server's message). A fork starts without marks: its requests are served as unmarked ones.
``RedknotEndpoint.preload(texts)`` stores documents before any program asks about them
(``POST /redknot/documents``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint
from sglang.utils import http_request

from redknot_sglang.integration.hooks.preload import ROUTE
from redknot_sglang.reuse.spans import DOCUMENTS_KEY

_ATTR = "_redknot_documents"


def document(s: Any, text: str) -> None:
    """Append ``text`` to program state ``s`` and mark it as a document."""
    s += text
    s.stream_executor.__dict__.setdefault(_ATTR, []).append(text)


class RedknotEndpoint(RuntimeEndpoint):
    """``RuntimeEndpoint`` that adds the program's document marks to each ``/generate``."""

    def _add_images(self, s: Any, data: dict) -> None:
        # the one place where both generate paths hand over the request body before sending it
        super()._add_images(s, data)
        docs = getattr(s, _ATTR, None)
        if docs:
            data["sampling_params"].setdefault("custom_params", {})[DOCUMENTS_KEY] = [{"text": d} for d in docs]

    def preload(self, texts: Sequence[str], cache_salt: Optional[str] = None) -> dict:
        """Store ``texts`` in the server's document store (canonical capture) under the tenant
        namespace ``cache_salt``; raises with the server's message on a bad document."""
        res = http_request(self.base_url + ROUTE, json={"documents": [{"text": t} for t in texts], "cache_salt": cache_salt},
                           api_key=self.api_key, verify=self.verify, method="POST")
        self._assert_success(res)
        return res.json()
