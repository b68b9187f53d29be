"""pydiffuse"""
