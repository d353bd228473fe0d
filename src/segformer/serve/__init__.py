"""``segformer serve``: an HTTP API and a web page for segmentation (Starlette + uvicorn, extra ``serve``)."""
