"""The FastAPI service (upload API, jobs, answers, OpenAI-compatible endpoint). See issue 5."""
