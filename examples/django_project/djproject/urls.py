from demo import views
from django.urls import path

urlpatterns = [
    path('info', views.info),  # this process: pid and reply queue
    path('add', views.add),  # send, then wait in the same request
    path('send', views.send),  # send only: returns the task id
    path('state/<str:task_id>', views.state),  # get_task_meta() in THIS process
    path('submit', views.submit),  # send; the sender stores the result
    path('status/<str:task_id>', views.status),  # read that store from any process
]
