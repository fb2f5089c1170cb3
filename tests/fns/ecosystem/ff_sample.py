"""functions-framework's own CloudEvent sample (it returns no event)."""
import functions_framework


# Register a CloudEvent function with the Functions Framework
@functions_framework.cloud_event
def my_cloudevent_function(cloud_event):
    # Your code here
    # Access the CloudEvent data payload via cloud_event.data
    print(f"Received event with ID: {cloud_event['id']} and data {cloud_event.data}")
