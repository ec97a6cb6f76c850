"""Every report raydetect writes: one document model, rendered to Markdown and HTML."""

from raydetect.report.document import Heading, Html, Image, Paragraph, Report, Table, write_report

__all__ = ["Heading", "Html", "Image", "Paragraph", "Report", "Table", "write_report"]
