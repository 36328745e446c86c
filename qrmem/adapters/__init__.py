"""Framework adapters, each behind its own extra and imported only when used:

- `qrmem.adapters.langchain` (`pip install 'qrmem[langchain]'`): `QrmemRetriever`, `QRRankerCompressor`;
- `qrmem.adapters.langgraph` (`pip install 'qrmem[langgraph]'`): `QrmemStore`, a LangGraph `BaseStore`;
- `qrmem.adapters.mem0` (`pip install 'qrmem[mem0]'`): `QRRankerMem0Reranker`, a mem0 `BaseReranker`.

They build on the public `Memory` / `Reranker` API only.
"""
