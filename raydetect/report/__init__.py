"""Every report raydetect writes: one document model, rendered to Markdown and HTML."""

from raydetect.report.document import Cell, Gallery, Heading, Html, Image, Paragraph, Report, Table, Thumb, write_report

__all__ = ["Cell", "Gallery", "Heading", "Html", "Image", "Paragraph", "Report", "Table", "Thumb", "write_report"]
