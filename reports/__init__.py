"""Reports of `audit run` and `audit compare`: report.json (versioned JSON Schema in schema/), a self-contained
report.html and report.md rendered from the Jinja2 templates in templates/, and the comparison page."""
