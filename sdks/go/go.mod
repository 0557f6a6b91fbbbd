module aforo-go

go 1.19
