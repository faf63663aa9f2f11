"""The FACET-VLM Streamlit app: real-time zero-shot expression recognition of uploaded 3D scans and 4D sequences.

Run it with `facet-vlm app --model DIR` or `streamlit run app/streamlit_app.py -- --model DIR`.
"""
